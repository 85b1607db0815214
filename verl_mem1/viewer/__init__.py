"""The episode viewer (``mem1 view``): one static HTML page showing, turn by turn, what a MEM1 agent saw, wrote into
its internal state, and what the context rule dropped.

- ``load.py`` reads episode records from ``mem1 eval`` / ``mem1 rollout`` / trajectory files and from verl's
  rollout dumps (``trainer.rollout_data_dir``, where the MEM1 agent loop puts each episode);
- ``episode.py`` turns one record into what the page shows (decoded parts, kept and dropped turns);
- ``mask.py`` draws the packed training sample's attention mask from the project's own layout code;
- ``page.py`` writes the self-contained page (``page.html``: markup, style and script, no network).
"""
