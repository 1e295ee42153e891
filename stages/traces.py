"""DVC stage `traces`: python stages/traces.py PARAMS DATA_DIR TEACHER OUT_DIR METRICS"""
import sys

from tdrm.pipeline.traces import traces_stage

if __name__ == "__main__":
    params, data_dir, teacher, out_dir, metrics = sys.argv[1:6]
    traces_stage(params, data_dir, teacher, out_dir, metrics)
