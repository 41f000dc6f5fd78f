//! InternalStorage implementations: local filesystem (default), and later S3, GCS and Azure.
