"""DVC stage `teacher`: python stages/teacher.py PARAMS DATA_DIR MODEL_OUT METRICS PLOT"""
import sys

from tdrm.pipeline.teacher import teacher_stage

if __name__ == "__main__":
    params, data_dir, model_out, metrics, plot = sys.argv[1:6]
    teacher_stage(params, data_dir, model_out, metrics, plot)
