"""DVC stage `report`: python stages/report.py METRICS_DIR PLOTS_DIR DATA_DIR TEACHER TDRM OUT"""
import sys

from tdrm.pipeline.report import report_stage

if __name__ == "__main__":
    report_stage(*sys.argv[1:7])
