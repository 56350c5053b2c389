//! RFC 6962 / RFC 9162 Merkle trees over one partition's records.
//!
//! Leaves are `SHA-256(0x00 ‖ d)`, interior nodes `SHA-256(0x01 ‖ l ‖ r)`,
//! and a tree of `n` leaves splits at the largest power of two below `n`.
//! The processor keeps only a [`Frontier`] per partition (the roots of the
//! perfect subtrees that make up the tree, O(log n) hashes), so anchoring a
//! 10M-record partition costs 24 hashes of memory. Proofs need the leaves:
//! inclusion paths come from rs_merkle (whose bottom-up tree with promoted
//! odd nodes is the RFC tree when given our hasher); consistency proofs,
//! which rs_merkle does not offer, follow RFC 9162 §2.1.4 directly.

use rs_merkle::{Hasher, MerkleTree};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of an empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// rs_merkle's hasher for RFC 6962 interior nodes. Leaves are hashed
/// before they are given to the tree ([`leaf_hash`]), so `hash` is only
/// called by rs_merkle through `concat_and_hash`.
#[derive(Clone)]
pub struct Rfc6962;

impl Hasher for Rfc6962 {
    type Hash = Hash;

    fn hash(data: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update(data);
        h.finalize().into()
    }

    fn concat_and_hash(left: &Hash, right: Option<&Hash>) -> Hash {
        match right {
            Some(right) => node_hash(left, right),
            // An unpaired node moves up unchanged: that is RFC 6962's split.
            None => *left,
        }
    }
}

/// The right edge of a tree: enough to append leaves and compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first; one per set
    /// bit of `size`.
    peaks: Vec<Hash>,
}

impl Frontier {
    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut size = self.size;
        // Each trailing one bit is a perfect subtree of the same height as
        // `node`: merge them, as binary addition carries.
        while size & 1 == 1 {
            let left = self.peaks.pop().expect("one peak per set bit");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The tree's root.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// The root of `leaves` (hashes), by the RFC's recursive definition.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The inclusion path of leaf `index` in the tree of `leaves`.
///
/// # Panics
/// If `index` is out of range.
pub fn inclusion_path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    assert!(index < leaves.len(), "leaf {index} of {}", leaves.len());
    if leaves.len() == 1 {
        return Vec::new();
    }
    MerkleTree::<Rfc6962>::from_leaves(leaves)
        .proof(&[index])
        .proof_hashes()
        .to_vec()
}

/// Checks an inclusion path (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// The consistency proof from the tree of the first `old` leaves to the
/// tree of all `leaves` (RFC 9162 §2.1.4.1).
///
/// # Panics
/// If `old` is 0 or above `leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old: usize) -> Vec<Hash> {
    assert!(old > 0 && old <= leaves.len(), "{old} of {}", leaves.len());
    let mut proof = Vec::new();
    subproof(old, leaves, true, &mut proof);
    proof
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root_of(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root_of(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root_of(&leaves[..k]));
    }
}

/// Checks a consistency proof between two roots (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn matches_the_rfc_6962_test_vectors() {
        // certificate-transparency-go's reference vectors: leaves are these
        // inputs, roots of the first 1..=8 leaves.
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let hashed: Vec<Hash> = inputs.iter().map(|d| leaf_hash(d)).collect();
        let mut frontier = Frontier::default();
        for (n, root) in roots.iter().enumerate() {
            frontier.push(hashed[n]);
            assert_eq!(hex::encode(frontier.root()), *root, "{} leaves", n + 1);
            assert_eq!(hex::encode(root_of(&hashed[..=n])), *root);
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    proptest! {
        #[test]
        fn frontier_and_rs_merkle_agree_with_the_definition(n in 1usize..300) {
            let leaves = leaves(n);
            let mut frontier = Frontier::default();
            for leaf in &leaves {
                frontier.push(*leaf);
            }
            let root = root_of(&leaves);
            prop_assert_eq!(frontier.root(), root);
            prop_assert_eq!(MerkleTree::<Rfc6962>::from_leaves(&leaves).root(), Some(root));
        }

        #[test]
        fn inclusion_paths_verify_and_detect_a_changed_leaf(n in 1usize..200, i in 0usize..200) {
            let i = i % n;
            let leaves = leaves(n);
            let root = root_of(&leaves);
            let path = inclusion_path(&leaves, i);
            prop_assert!(verify_inclusion(i as u64, n as u64, &leaves[i], &path, &root));
            prop_assert!(!verify_inclusion(i as u64, n as u64, &leaf_hash(b"other"), &path, &root));
            if n > 1 {
                let other = (i + 1) % n;
                prop_assert!(!verify_inclusion(other as u64, n as u64, &leaves[i], &path, &root));
            }
        }

        #[test]
        fn consistency_proofs_verify_and_detect_a_rewritten_prefix(n in 1usize..200, m in 1usize..200) {
            let m = 1 + (m - 1) % n;
            let leaves = leaves(n);
            let (old, new) = (root_of(&leaves[..m]), root_of(&leaves));
            let proof = consistency_proof(&leaves, m);
            prop_assert!(verify_consistency(m as u64, n as u64, &old, &new, &proof));
            let mut rewritten = leaves.clone();
            rewritten[m - 1] = leaf_hash(b"rewritten");
            let forged = root_of(&rewritten[..m]);
            prop_assert!(!verify_consistency(m as u64, n as u64, &forged, &new, &proof));
        }
    }
}
