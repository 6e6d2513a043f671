//! Streams between threads in batches: a walk or a listing hands on
//! hundreds of thousands of small items, and one wake-up of the other side
//! per item costs more than the item. A batch goes out when it is full, or
//! at once when the receiver has drained everything and may be waiting.

use tokio::sync::mpsc;

/// Items per batch, at most.
const BATCH: usize = 256;

/// The receiving end: items one by one, in order.
pub struct Batches<T> {
    rx: mpsc::Receiver<Vec<T>>,
    now: std::vec::IntoIter<T>,
}

impl<T> Batches<T> {
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.now.next() {
                return Some(item);
            }
            self.now = self.rx.recv().await?.into_iter();
        }
    }
}

/// A stream of at most `batches` batches in flight.
pub fn channel<T>(batches: usize) -> (Sender<T>, Batches<T>) {
    let (tx, rx) = mpsc::channel(batches.max(1));
    let rx = Batches {
        rx,
        now: Vec::new().into_iter(),
    };
    (Sender { tx }, rx)
}

/// The sending end, used through [`Sender::feed_blocking`] or
/// [`Sender::feed`], which hand on what is left when the producer is done.
pub struct Sender<T> {
    tx: mpsc::Sender<Vec<T>>,
}

impl<T> Sender<T> {
    fn due(&self, buf: &[T]) -> bool {
        buf.len() >= BATCH || (!buf.is_empty() && self.tx.capacity() == self.tx.max_capacity())
    }

    /// Runs `produce` on this (blocking) thread with a `push` that returns
    /// false once the receiver is gone.
    pub fn feed_blocking(self, produce: impl FnOnce(&mut dyn FnMut(T) -> bool)) {
        let mut buf = Vec::with_capacity(BATCH);
        let mut open = true;
        produce(&mut |item| {
            buf.push(item);
            if open && self.due(&buf) {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(BATCH));
                open = self.tx.blocking_send(full).is_ok();
            }
            open
        });
        if open && !buf.is_empty() {
            let _ = self.tx.blocking_send(buf);
        }
    }

    /// Adds `item` to `buf` and sends the batch when it is due (async);
    /// false once the receiver is gone. The caller ends with
    /// [`Sender::flush`].
    pub async fn push(&self, buf: &mut Vec<T>, item: T) -> bool {
        buf.push(item);
        if self.due(buf) {
            let full = std::mem::replace(buf, Vec::with_capacity(BATCH));
            return self.tx.send(full).await.is_ok();
        }
        true
    }

    /// Sends what is left in `buf`.
    pub async fn flush(&self, buf: Vec<T>) {
        if !buf.is_empty() {
            let _ = self.tx.send(buf).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_arrives_in_order_whatever_the_batches() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for n in [0, 1, 255, 256, 257, 10_000] {
            let (tx, mut rx) = channel::<usize>(2);
            let producer = std::thread::spawn(move || {
                tx.feed_blocking(|push| {
                    for i in 0..n {
                        if !push(i) {
                            return;
                        }
                    }
                })
            });
            let got = rt.block_on(async {
                let mut got = Vec::new();
                while let Some(i) = rx.recv().await {
                    got.push(i);
                }
                got
            });
            producer.join().expect("producer");
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "{n}");
            let (tx, mut rx) = channel::<usize>(2);
            let got = rt.block_on(async move {
                let send = async move {
                    let mut buf = Vec::new();
                    for i in 0..n {
                        assert!(tx.push(&mut buf, i).await);
                    }
                    tx.flush(buf).await;
                };
                let recv = async {
                    let mut got = Vec::new();
                    while let Some(i) = rx.recv().await {
                        got.push(i);
                    }
                    got
                };
                tokio::join!(send, recv).1
            });
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "async {n}");
        }
    }

    #[test]
    fn a_producer_stops_when_the_receiver_is_gone() {
        let (tx, rx) = channel::<usize>(1);
        drop(rx);
        let mut pushed = 0;
        tx.feed_blocking(|push| {
            while push(pushed) {
                pushed += 1;
            }
        });
        assert!(pushed <= BATCH, "{pushed}");
    }
}
