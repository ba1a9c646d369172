"""Every point of ../shared/CONFORMANCE.md, checked on the wire against the conformance app."""
