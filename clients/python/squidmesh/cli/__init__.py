"""The client commands of the `squidmesh` command (workflows, runs, events, workers); `parser`
declares them and imports the rest only when one runs."""
