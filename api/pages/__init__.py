"""Server-rendered HTML pages for people in a browser; the same data and access rules as the JSON API."""
