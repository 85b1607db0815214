"""WebShop as an installable environment server: WebShop's pages, actions, goals and reward, no Java needed."""
