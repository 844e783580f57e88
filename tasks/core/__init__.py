"""The project's vocabulary: errors, months, settings, scenes, logging, retries, memory and device."""
