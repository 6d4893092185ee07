//! NBD error values, and the one mapping between them and host I/O errors, both ways: a
//! server turns a failed operation's `io::Error` into the value it replies with
//! ([`errno_of`]); a client turns a reply's value back into an `io::Error` ([`io_error_of`]).
//! The protocol's values are Linux errno numbers, but only these few are ever sent.

use std::io;

/// Operation not permitted (write to a read-only export).
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Out of memory.
pub const ENOMEM: u32 = 12;
/// Invalid argument (out of range, bad flags, unknown command).
pub const EINVAL: u32 = 22;
/// No space (write beyond the end, or nowhere to record it).
pub const ENOSPC: u32 = 28;
/// Value too large.
pub const EOVERFLOW: u32 = 75;
/// Not supported (FAST_ZERO that cannot be fast).
pub const ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// The NBD error value to reply with for a host I/O error: no space (including quota and file
/// size limits) is ENOSPC, "not supported" is ENOTSUP, any other host errno is EIO. An error
/// with no errno (an NBD upstream's, which arrives with a message and only its kind kept) is
/// mapped by its kind, invalid input being EINVAL.
pub fn errno_of(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT) | Some(nix::libc::EFBIG) => ENOSPC,
        Some(nix::libc::ENOTSUP) => ENOTSUP,
        Some(_) => EIO,
        None => match e.kind() {
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => ENOSPC,
            io::ErrorKind::Unsupported => ENOTSUP,
            io::ErrorKind::InvalidInput => EINVAL,
            _ => EIO,
        },
    }
}

/// The host I/O error for an NBD error value a server replied with (0 is not an error and,
/// like any value outside errno's range, reads as EIO).
pub fn io_error_of(e: u32) -> io::Error {
    let errno = if e == 0 || e > 4095 {
        nix::libc::EIO
    } else {
        e as i32
    };
    io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_errors_map_to_the_few_values_nbd_sends() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(errno_of(&os(nix::libc::EDQUOT)), ENOSPC);
        assert_eq!(errno_of(&os(nix::libc::ENOTSUP)), ENOTSUP);
        assert_eq!(errno_of(&os(nix::libc::EBADF)), EIO);
        assert_eq!(errno_of(&io::ErrorKind::InvalidInput.into()), EINVAL);
        assert_eq!(errno_of(&io::ErrorKind::Other.into()), EIO);
        assert_eq!(io_error_of(ENOSPC).raw_os_error(), Some(nix::libc::ENOSPC));
        assert_eq!(io_error_of(0).raw_os_error(), Some(nix::libc::EIO));
    }
}
