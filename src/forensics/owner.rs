//! The owner of one filesystem block, the answer every filesystem reader gives (ext2/3/4 in
//! [`super::ext4`], XFS in [`super::xfs`]) and the one the report's words are made from
//! ([`super::symptom`]). It sits below the readers and the seam that chooses between them
//! ([`super::fs`]), so that they share it without importing each other.

/// What owns one filesystem block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Data of a regular file (or symlink): its path and the byte range within it.
    FileData {
        /// Inode number.
        ino: u64,
        /// Path, when the inode has a name.
        path: Option<String>,
        /// Byte offset of this block within the file, when the file's extent map gives it.
        file_offset: Option<u64>,
    },
    /// A block of a directory's entries.
    Directory {
        /// Inode number.
        ino: u64,
        /// Path.
        path: Option<String>,
    },
    /// An extent-tree (or indirect) block: the map of where a file's data lives.
    BlockMap {
        /// Inode number.
        ino: u64,
        /// Path.
        path: Option<String>,
    },
    /// The filesystem journal.
    Journal,
    /// A block of an inode table.
    InodeTable {
        /// Block group.
        group: u64,
        /// First and last inode numbers stored in the block.
        inodes: (u64, u64),
        /// Paths of the named inodes among them.
        paths: Vec<String>,
    },
    /// A block allocation bitmap.
    BlockBitmap {
        /// Block group.
        group: u64,
    },
    /// An inode allocation bitmap.
    InodeBitmap {
        /// Block group.
        group: u64,
    },
    /// A superblock copy.
    Superblock {
        /// Block group.
        group: u64,
    },
    /// A group descriptor table copy.
    Descriptors {
        /// Block group.
        group: u64,
    },
    /// Blocks reserved for growing the descriptor table.
    ReservedGdt,
    /// Another reserved inode (bad blocks, boot loader, quota ...).
    Special {
        /// Inode number.
        ino: u64,
    },
    /// Not used by any inode or by the filesystem's own structures.
    Free,
    /// A structure of a filesystem other than ext2/3/4, in that filesystem's own words (the
    /// reader that found it knows them best).
    Structure {
        /// Short kind, as in `FileRef::owner` ("ag-header", "inode-chunk", "log", ...).
        owner: &'static str,
        /// What the block is.
        what: String,
        /// What a user will see when it is damaged.
        symptom: String,
    },
}
