//! Sources of raw messages: files, directories, Maildir, mbox, stdin, and the LMTP listener.
