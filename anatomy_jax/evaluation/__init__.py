"""What a trained run is worth, and using it: scores, the run loaded back, reports, classifying files.

  scores     accuracy with its interval, per-class precision/recall/F1, ROC AUC, confusion, per-case accuracy
  inference  a trained run loaded back from its workdir, with the evaluation forward pass
  report     evaluating a checkpoint on a split or a folder: eval_<split>.json, confusion matrix CSV and PNG
  classify   classifying image files: one CSV row per file
"""

MAY_IMPORT = ('core', 'models', 'data', 'training')
