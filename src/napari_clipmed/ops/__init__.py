"""One module per operation: a frozen Request, `iter_run(request, model)`, `run`, and a Result."""
