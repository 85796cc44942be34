"""The contract between stages: every file one stage hands to another, in one place.

Each file below has exactly one writer and one reader module here (typed records, frozen
dataclasses where the file is a record), its name in one constant, and its fields
documented in that module's docstring. No other module opens these files by name
(tests/test_contract.py checks that). Every writer follows the commit protocol of
``dataset.common.atomic``: atomic (temporary name, rename), durable (fsync file and
folder) and done under the output folder's lock.

=======================================  ==============  ======================  =======================================
file                                     module          written by              read by
=======================================  ==============  ======================  =======================================
STORE/catalog.json                       catalog         pancreas preprocess     index, train, evaluate --run
STORE/cases/<case>.h5                    store           pancreas preprocess     index, train (reader), evaluate --run
STORE/index/split.json                   index           pancreas index          evaluate --run
STORE/index/fold_<k>/train.csv, val.csv  manifest        pancreas index          train (reader)
STORE/index/augmented/<case>.h5          augmented       pancreas index          train (reader)
STORE/index/summary.json                 index           pancreas index (last)   train, evaluate --run (``check_index``)
RUN_DIR/config.json                      run             pancreas train          train --resume
RUN_DIR/fingerprints.json                run             pancreas train          train --resume
RUN_DIR/input_contract.json              run             pancreas train          predict, evaluate --run
RUN_DIR/state.json                       run             pancreas train (last)   train --resume
RUN_DIR/checkpoints/{best,last}          run             pancreas train          predict, train --resume
RUN_DIR/environment.json                 run             pancreas train          people (what a run ran on)
PRED_DIR/predictions.json                predictions     pancreas predict        predict (resume, ownership of outputs)
CV_DIR/postprocessing.json               postprocessing  pancreas evaluate --cv  predict --postprocessing
=======================================  ==============  ======================  =======================================

CV_DIR is the output folder of ``pancreas evaluate --cv``; predict takes its decision file
by path (``--postprocessing FILE``).

Fingerprints that tie an output to its inputs are compared only through
``fingerprints.check_fingerprint``, so every mismatch is worded the same way.
"""
