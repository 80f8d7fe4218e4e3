"""The grading service: grades a rollout by running the task's hidden tests in a fresh,
network-less container of the task's image. `python -m grader` serves it over HTTP;
`grader.client.GraderClient` calls it; `python -m grader.validate` checks a deployment."""
