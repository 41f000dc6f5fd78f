//! Kafka's default partitioner for keyed records (`murmur2`, as in the Java clients and librdkafka's
//! `murmur2_random`), so that this backend places a key exactly where any other Kafka client does.

/// Kafka's murmur2 hash of `data` (seed `0x9747b28c`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` partitions: `(murmur2(key) & 0x7fffffff) % partitions`,
/// what Kafka's Java producer and librdkafka's `murmur2_random` partitioner compute. Every record of
/// this backend is placed with it, so a key is owned by the same consumer in every co-partitioned
/// topic and in the executor's state changelog.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % n) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_java_murmur2() {
        // Values from Kafka's own UtilsTest (org.apache.kafka.common.utils.Utils.murmur2).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn same_key_same_partition_within_range() {
        for p in [1, 3, 8, 50] {
            for k in ["", "a", "exec-1", "tenant|ns|flow"] {
                let x = partition_for(k, p);
                assert!((0..p).contains(&x));
                assert_eq!(x, partition_for(k, p));
            }
        }
    }
}
