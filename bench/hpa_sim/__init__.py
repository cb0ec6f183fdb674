"""Simulation of the Kubernetes autoscalers (HPA and KEDA) against a queue model of the service."""
