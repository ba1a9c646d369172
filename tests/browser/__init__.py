"""A real browser (Debian's Chromium, headless, via playwright-core) on the demo page."""
