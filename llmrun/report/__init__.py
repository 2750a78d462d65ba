"""Looking at a run: ``llmrun report`` (one offline HTML file with plots) and ``llmrun view``
(a loopback web page to browse the rows)."""
