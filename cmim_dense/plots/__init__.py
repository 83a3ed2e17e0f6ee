"""Figures: the segmentation-vs-depth chart, qualitative NYUD-v2 grids and analysis plots.

Modules: :mod:`.seg_depth` (Fig. 5b) over :mod:`.finetune_results` (fine-tuning runs read, seeds
gathered) and :mod:`.result_tables` (the tables), :mod:`.qualitative` and :mod:`.palette` (Fig. 5a),
:mod:`.analysis` with :mod:`.activations`, :mod:`.tsne` and :mod:`.sweep` (Fig. 3, Fig. 4,
Table 3).  Everything draws on matplotlib Figure objects with the Agg canvas (no pyplot).
"""
