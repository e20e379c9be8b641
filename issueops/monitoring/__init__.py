"""Production monitoring: payload logs, reference profiles, drift and performance of served versions.

payloads     KServe payload-logger CloudEvents, batched into monitoring/<model>/<version>/<date>/
profile      the reference profile saved with a version at training time
drift        per-feature drift tests (Evidently's defaults), prediction drift, dataset verdict
performance  delayed labels (feedback), the registered metric on production traffic, CBPE estimate
triggers     drift / performance / schedule triggers of production models (issueops monitor check)
proposals    the one retraining-proposal issue per model and trigger, and its spec for /approve-retrain
receiver     the CloudEvents receiver KServe's payload logger posts to (issueops monitor serve)
"""
