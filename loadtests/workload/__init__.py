"""The pieces of loadtests/locustfile.py: question pool, scenarios, client, samples, summary, plot."""
