//! Searching a map keyed by owned names with borrowed ones: a key type
//! gives its names as [`KeyParts`] and borrows as `dyn KeyParts<N>`, so a
//! lookup by `[&str; N]` builds no owned key (no allocation per command on
//! the hot path). The parts must order as the owned key does: its fields'
//! derived order, one name after another.

/// A key's names, in its order.
pub(super) trait KeyParts<const N: usize> {
    fn parts(&self) -> [&str; N];
}

impl<const N: usize> KeyParts<N> for [&str; N] {
    fn parts(&self) -> [&str; N] {
        *self
    }
}

impl<const N: usize> PartialEq for dyn KeyParts<N> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl<const N: usize> Eq for dyn KeyParts<N> + '_ {}

impl<const N: usize> PartialOrd for dyn KeyParts<N> + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for dyn KeyParts<N> + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}
