"""DVC stage `evaluate`: python stages/evaluate.py PARAMS DATA_DIR MODEL METRICS PLOT"""
import sys

from tdrm.pipeline import evaluate_stage

if __name__ == "__main__":
    params, data_dir, model, metrics, plot = sys.argv[1:6]
    evaluate_stage(params, data_dir, model, metrics, plot)
