"""DVC stage `distill`: python stages/distill.py PARAMS TRACES TEACHER OUT METRICS PLOT [--final-only]"""
import sys

from tdrm.pipeline.distill import distill_stage

if __name__ == "__main__":
    params, traces, teacher, out, metrics, plot = sys.argv[1:7]
    distill_stage(params, traces, teacher, out, metrics, plot, final_only="--final-only" in sys.argv[7:])
