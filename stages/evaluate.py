"""DVC stage `evaluate`:
python stages/evaluate.py PARAMS DATA_DIR TEACHER METRICS PLOT [TDRM CONTROL TDRM_METRICS PLOTS_DIR]"""
import sys

from tdrm.pipeline import evaluate_stage

if __name__ == "__main__":
    params, data_dir, model, metrics, plot = sys.argv[1:6]
    extra = sys.argv[6:10]
    if extra:
        tdrm, control, tdrm_metrics, plots_dir = extra
        evaluate_stage(params, data_dir, model, metrics, plot, tdrm, control, tdrm_metrics, plots_dir)
    else:
        evaluate_stage(params, data_dir, model, metrics, plot)
