//! Splitting events into SendMessageBatch calls within SQS's limits.

/// SQS's largest batch.
pub const MAX_ENTRIES: usize = 10;

/// Where each event goes: into a batch, or nowhere because it alone is too large.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Batches of event indices, in input order, each within the entry and byte limits.
    pub batches: Vec<Vec<usize>>,
    /// Indices of events larger than the per-message limit.
    pub oversized: Vec<usize>,
}

/// Plans batches for events of the given sizes (bytes of body plus attributes).
///
/// `max_bytes` bounds each message and the sum of each batch: SQS applies the same
/// limit to both. Order is kept, so a FIFO group stays in order.
pub fn plan(sizes: &[usize], max_bytes: usize) -> Plan {
    let mut batches = Vec::new();
    let mut oversized = Vec::new();
    let mut current: Vec<usize> = Vec::with_capacity(MAX_ENTRIES);
    let mut current_bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max_bytes {
            oversized.push(i);
            continue;
        }
        if current.len() == MAX_ENTRIES || current_bytes + size > max_bytes {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(i);
        current_bytes += size;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Plan { batches, oversized }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_entries_at_most() {
        let p = plan(&[1; 25], 1000);
        let lens: Vec<usize> = p.batches.iter().map(Vec::len).collect();
        assert_eq!(lens, [10, 10, 5]);
        assert_eq!(p.batches.concat(), (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn bytes_bound_each_batch() {
        let p = plan(&[400, 400, 400, 100, 1000], 1000);
        assert_eq!(p.batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(p.oversized.is_empty());
        for b in &p.batches {
            assert!(
                b.iter()
                    .map(|&i| [400, 400, 400, 100, 1000][i])
                    .sum::<usize>()
                    <= 1000
            );
        }
    }

    #[test]
    fn oversized_events_are_set_apart() {
        let p = plan(&[10, 1001, 10], 1000);
        assert_eq!(p.batches, vec![vec![0, 2]]);
        assert_eq!(p.oversized, vec![1]);
    }
}
