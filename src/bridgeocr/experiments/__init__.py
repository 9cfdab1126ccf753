"""Orchestration on top of train and eval: the seed's loss diagnostic (loss_gap), sweeps, the comparison table and
its plots, the demo, and the connector speed benchmark behind `bridgeocr bench`. Nothing below imports these."""
