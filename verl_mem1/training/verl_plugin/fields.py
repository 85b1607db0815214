"""Names the plug-in's parts share without importing each other: the per-sample fields the MEM1 agent loop hands the
MEM1 engine through verl's batch (``extra_fields``), and the engine vendor key that selects the MEM1 engines.

A module of its own so the agent loop, which runs where no training engine is loaded, names them without importing
the engine (and with it verl's FSDP stack).
"""

POSITION_KEY = "mem1_position_ids"  # the packed sample's position ids (each copy of a context keeps its positions)
SEGMENT_KEY = "mem1_segment_ids"  # the packed sample's segment ids (which block-sparse group each token is in)
ATTENTION_KEY = "mem1_attention"  # the run's mem1.attention, carried by each sample from the agent loop
# verl's EngineRegistry builds the MEM1 engines only where VERL_ENGINE_VENDOR=mem1 (engine.py registers them under that
# vendor key alone): set by the MEM1 recipes for every Ray worker (recipes/cluster.yaml) and by `mem1 sft`
ENGINE_VENDOR = "mem1"
ENGINE_VENDOR_ENV = "VERL_ENGINE_VENDOR"
