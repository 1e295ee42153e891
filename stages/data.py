"""DVC stage `data`: python stages/data.py PARAMS OUT_DIR METRICS"""
import sys

from tdrm.pipeline.data import data_stage

if __name__ == "__main__":
    params, out_dir, metrics = sys.argv[1:4]
    data_stage(params, out_dir, metrics)
