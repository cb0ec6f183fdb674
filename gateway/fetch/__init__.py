"""Images by URL: the rules of what may be fetched (policy) and the client that fetches."""
