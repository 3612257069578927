"""The domain model: the workflow's contracts and the API's models. It imports nothing of the project."""
