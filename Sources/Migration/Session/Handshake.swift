/// The opening of a migration, the same on both sides: preambles, `hello`, and — with a
/// pre-shared key — mutual proof of the key (an HMAC over both nonces and the prover's role,
/// so neither proof can be replayed as the other), after which both directions are sealed
/// (`StreamKeys`).
enum Handshake {
    /// What the handshake established.
    struct Result {
        /// This side's and the peer's 32-byte nonces.
        var localNonce: [UInt8]
        var peerNonce: [UInt8]
        /// The peer's VMM version.
        var peerVMMVersion: String
    }

    /// Source side: announces the guest and, with `key`, proves it and checks the target's proof.
    static func initiate(_ conn: Connection, hello: Hello, key: [UInt8]?) throws -> Result {
        try conn.writePreamble(version: hello.streamVersion)
        _ = try conn.readPreamble()
        let nonce = Auth.nonce()
        var hello = hello
        hello.nonce = nonce.hexString
        hello.hasKey = key != nil
        try conn.send(hello)
        let reply = try conn.expect(HelloReply.self)
        guard let peerNonce = [UInt8](hexString: reply.nonce), peerNonce.count == Auth.nonceBytes else {
            throw MigrationError.stream("malformed hello reply from the target (nonce)")
        }
        if let key {
            guard reply.hasKey else {
                conn.sendError("authentication required: the source has a key, the target has none (--key-file)")
                throw MigrationError.auth("the target has no key: start recv with the same --key-file")
            }
            guard let proof = reply.proof.flatMap([UInt8].init(hexString:)),
                  Auth.equal(proof, Auth.proof(key: key, role: .target, first: nonce, second: peerNonce)) else {
                conn.sendError("authentication failed: wrong key")
                throw MigrationError.auth("authentication failed: the target's key differs from --key-file")
            }
            try conn.send(AuthProof(proof: Auth.proof(key: key, role: .source, first: peerNonce, second: nonce).hexString))
            try conn.startSealing(StreamKeys.derive(key: key, sourceNonce: nonce, targetNonce: peerNonce, role: .source))
        }
        return Result(localNonce: nonce, peerNonce: peerNonce, peerVMMVersion: reply.vmmVersion)
    }

    /// Reads a would-be source's preamble and `hello`; throws for anything that is not one.
    static func readHello(_ conn: Connection) throws -> (preambleVersion: UInt32, hello: Hello) {
        try conn.writePreamble()
        let version = try conn.readPreamble()
        return (version, try conn.expect(Hello.self))
    }

    /// Target side, after `readHello`: refuses another stream version and, with `key`,
    /// authenticates the source (and proves the key to it).
    static func respond(_ conn: Connection, preambleVersion: UInt32, hello: Hello, key: [UInt8]?) throws -> Result {
        guard preambleVersion == Wire.streamVersion, hello.streamVersion == Wire.streamVersion else {
            let msg = "stream version \(hello.streamVersion) is not supported: this swiftvmm \(SwiftVMMVersion.string) speaks version \(Wire.streamVersion)"
            conn.sendError(msg)
            throw MigrationError.refused(msg)
        }
        guard let sourceNonce = [UInt8](hexString: hello.nonce), sourceNonce.count == Auth.nonceBytes else {
            throw MigrationError.stream("malformed hello from the source (nonce)")
        }
        let nonce = Auth.nonce()
        var reply = HelloReply(streamVersion: Wire.streamVersion, vmmVersion: SwiftVMMVersion.string,
                               nonce: nonce.hexString, hasKey: key != nil, proof: nil)
        guard let key else {
            try conn.send(reply)
            return Result(localNonce: nonce, peerNonce: sourceNonce, peerVMMVersion: hello.vmmVersion)
        }
        guard hello.hasKey else {
            conn.sendError("authentication required: the target has a key; pass the same --key-file to send")
            throw MigrationError.auth("refused an unauthenticated source: this recv requires --key-file on send")
        }
        reply.proof = Auth.proof(key: key, role: .target, first: sourceNonce, second: nonce).hexString
        try conn.send(reply)
        let auth: AuthProof
        do { auth = try conn.expect(AuthProof.self) } catch MigrationError.peer(let m) {
            throw MigrationError.auth("the source refused authentication: \(m)")
        }
        guard let proof = [UInt8](hexString: auth.proof),
              Auth.equal(proof, Auth.proof(key: key, role: .source, first: nonce, second: sourceNonce)) else {
            conn.sendError("authentication failed: wrong key")
            throw MigrationError.auth("authentication failed: the source's key differs from --key-file")
        }
        try conn.startSealing(StreamKeys.derive(key: key, sourceNonce: sourceNonce, targetNonce: nonce, role: .target))
        return Result(localNonce: nonce, peerNonce: sourceNonce, peerVMMVersion: hello.vmmVersion)
    }
}
