"""The Hydra recipes, importable as ``verl_mem1.recipes`` (``verl_mem1/recipes`` links here), so a wheel install ships
them and Hydra finds them on its search path as ``pkg://verl_mem1.recipes``. Not code: YAML files only."""
