"""The Kafka side: Faust app and settings, topics, codecs, dead letters, embedded broker."""
