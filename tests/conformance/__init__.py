"""Every point of docs/conformance.md, checked on the wire against the conformance app."""
