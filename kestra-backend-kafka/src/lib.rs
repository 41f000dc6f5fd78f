//! Kafka + Elasticsearch backend: the queue on Kafka topics (transactions, compacted state) and the
//! repositories on Elasticsearch, fed by the indexer. A later issue fills this crate; it is empty today.
