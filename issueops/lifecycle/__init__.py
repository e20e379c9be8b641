"""A training request's life: the state machine, the CRD, custom resources, the operator's runtime."""
