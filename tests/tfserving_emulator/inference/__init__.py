"""Inference on loaded servables: Predict, Classify, Regress and GetModelMetadata, shared by gRPC and REST."""
