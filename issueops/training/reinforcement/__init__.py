"""Reinforcement learning on Ray RLlib (fitting only): budget.py (the stopping unit), environment.py
(the Gymnasium environment and the Ray address, checked), ray.py (training and the greedy policy's ONNX
export). Evaluation of the policy is in issueops.evaluation.reinforcement."""
