"""Command-line tools that run the app's surroundings (Orthanc, OHIF), not the method or the app."""
