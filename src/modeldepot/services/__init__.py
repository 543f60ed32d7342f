"""Domain rules. Nothing here knows HTTP, SQL dialects or storage SDKs; stores come in as interfaces."""
