"""DVC stage `evaluate`:
python stages/evaluate.py PARAMS DATA_DIR TEACHER METRICS PLOT [TDRM CONTROL TDRM_METRICS PLOTS_DIR]"""
import sys

from tdrm.pipeline.evaluate import evaluate_stage

if __name__ == "__main__":
    params, data_dir, model, metrics, plot, *extra = sys.argv[1:]
    evaluate_stage(params, data_dir, model, metrics, plot, *extra)
