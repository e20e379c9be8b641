"""The GitHub bridge: webhook receiver and poller in front of the request state machine.

webhook.py     verify, de-duplicate, queue, answer within GitHub's 10 s
poll.py        the same events from the REST API, for repositories without a public URL
inbox.py       the durable queue of deliveries (and the poller's cursors), SQLite
events.py      what an event asks for, read from its payload
service.py     the worker: authorise, reply, create requests, apply operator input
controller.py  one request's next step: submit, follow, ask, roll back, time out
backends.py    where attempts run: a local subprocess or Kubeflow Pipelines
kube.py        cluster mode: TrainingRequest resources instead of the local store
messages.py    what is said on the issue
wiring.py      open_bridge: the bridge assembled from settings (inbox, service, controller, backend)
"""
