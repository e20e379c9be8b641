"""Production monitoring: payload logs, reference profiles, drift and performance of served versions.

payloads     KServe payload-logger CloudEvents, batched into monitoring/<model>/<version>/<date>/
profile      the reference profile saved with a version at training time
drift        per-feature drift tests (Evidently's defaults), prediction drift, dataset verdict
performance  delayed labels (feedback), the registered metric on production traffic, CBPE estimate
"""
