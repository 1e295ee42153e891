"""DVC stage `rl`: python stages/rl.py PARAMS DATA TDRM OUT METRICS PLOTS_DIR"""
import sys

from tdrm.pipeline.rl import rl_stage

if __name__ == "__main__":
    params, data, tdrm, out, metrics, plots = sys.argv[1:7]
    rl_stage(params, data, tdrm, out, metrics, plots)
