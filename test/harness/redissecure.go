package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// A Redis Cluster as managed services run it (Options.RedisClusterTLS,
// Options.RedisClusterUser): TLS on every link, clients' and the nodes'
// own, and an ACL user for the application.
//
// TLS: the harness makes a CA for the cluster and a certificate for each
// Redis node naming its alias only (redis<i>), as a cluster whose nodes
// have certificates of their own does; a client that checks every node
// against the name of the first it was given fails on the others. The
// Redis nodes serve TLS only (--port 0), cluster bus and replication
// included, and ask clients for no certificate. The channelsd nodes trust
// the CA through SSL_CERT_FILE, which Go's crypto/x509 reads on Linux.
//
// ACL: the user is defined on every Redis node from its command line
// (--user, the redis.conf directive). The default user then gets a
// password of the harness's own (--requirepass), which the harness's
// clients, redis-cli and the replicas (--masterauth) use.

// RedisUser is an ACL user of the Redis Cluster (Options.RedisClusterUser).
type RedisUser struct {
	Name, Password string
	// Rules follow "on >password" in the user's definition, in ACL
	// SETUSER syntax: "~channelsd:*", "&channelsd:*", "+publish", ...
	Rules []string
}

// Where the certificates lie in the containers.
const (
	tlsDir        = "/tls/"
	tlsCAFile     = tlsDir + "ca.crt"
	tlsCertFile   = tlsDir + "redis.crt"
	tlsKeyFile    = tlsDir + "redis.key"
	nodeCAEnvName = "SSL_CERT_FILE"
)

// redisSecurity is what a Redis Cluster with TLS or an ACL user needs.
type redisSecurity struct {
	tls   bool
	caPEM []byte
	pool  *x509.CertPool
	// certs and keys are each Redis node's, in PEM, by alias.
	certs, keys map[string][]byte
	// admin is the default user's password; user the application's.
	admin string
	user  *RedisUser
}

// newRedisSecurity prepares what opts asks for, or returns nil when it
// asks for neither.
func newRedisSecurity(opts Options, nodes int) (*redisSecurity, error) {
	if !opts.RedisClusterTLS && opts.RedisClusterUser == nil {
		return nil, nil
	}
	s := &redisSecurity{tls: opts.RedisClusterTLS, user: opts.RedisClusterUser}
	if s.user != nil {
		if s.user.Name == "" || s.user.Password == "" || strings.ContainsAny(s.user.Name+s.user.Password, " \t\r\n") {
			return nil, fmt.Errorf("RedisClusterUser needs a name and a password without white space")
		}
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		s.admin = hex.EncodeToString(b)
	}
	if s.tls {
		if err := s.makeCertificates(nodes); err != nil {
			return nil, fmt.Errorf("certificates for the Redis Cluster: %w", err)
		}
	}
	return s, nil
}

// makeCertificates makes the CA and one certificate per Redis node, for
// serving and, on the cluster bus and replication links, for dialling.
func (s *redisSecurity) makeCertificates(nodes int) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "channelsd test Redis CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return err
	}
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	s.pool = x509.NewCertPool()
	s.pool.AddCert(ca)
	s.certs, s.keys = map[string][]byte{}, map[string][]byte{}
	for i := 1; i <= nodes; i++ {
		alias := redisClusterAlias(i)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		leaf := &x509.Certificate{
			SerialNumber: big.NewInt(int64(1 + i)),
			Subject:      pkix.Name{CommonName: alias},
			DNSNames:     []string{alias},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		s.certs[alias] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		s.keys[alias] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	return nil
}

// redisArgs are the redis-server flags of node alias, after
// redisClusterArgs's.
func (s *redisSecurity) redisArgs() []string {
	if s == nil {
		return nil
	}
	var args []string
	if s.tls {
		args = append(args,
			"--port", "0", "--tls-port", "6379",
			"--tls-cluster", "yes", "--tls-replication", "yes",
			"--tls-cert-file", tlsCertFile, "--tls-key-file", tlsKeyFile, "--tls-ca-cert-file", tlsCAFile,
			"--tls-auth-clients", "no")
	}
	if s.user != nil {
		args = append(args, "--requirepass", s.admin, "--masterauth", s.admin,
			"--user", s.user.Name, "on", ">"+s.user.Password)
		args = append(args, s.user.Rules...)
	}
	return args
}

// redisFiles are the files of Redis node alias: the CA, its certificate
// and its key.
func (s *redisSecurity) redisFiles(alias string) []testcontainers.ContainerFile {
	if s == nil || !s.tls {
		return nil
	}
	return []testcontainers.ContainerFile{
		{Reader: strings.NewReader(string(s.caPEM)), ContainerFilePath: tlsCAFile, FileMode: 0o644},
		{Reader: strings.NewReader(string(s.certs[alias])), ContainerFilePath: tlsCertFile, FileMode: 0o644},
		// Readable by Redis's user (the images run as 999), in a
		// container nothing else runs in.
		{Reader: strings.NewReader(string(s.keys[alias])), ContainerFilePath: tlsKeyFile, FileMode: 0o644},
	}
}

// nodeFiles and nodeEnv give a channelsd node the CA to trust.
func (s *redisSecurity) nodeFiles() []testcontainers.ContainerFile {
	if s == nil || !s.tls {
		return nil
	}
	return []testcontainers.ContainerFile{{Reader: strings.NewReader(string(s.caPEM)), ContainerFilePath: tlsCAFile, FileMode: 0o644}}
}

func (s *redisSecurity) nodeEnv(env map[string]string) {
	if s != nil && s.tls {
		env[nodeCAEnvName] = tlsCAFile
	}
}

// cliArgs are redis-cli's options to reach a node of the cluster as the
// default user. redis-cli checks the certificate against the CA (it
// dials addresses, not names: the check is of the chain).
func (s *redisSecurity) cliArgs() []string {
	var args []string
	if s == nil {
		return nil
	}
	if s.tls {
		args = append(args, "--tls", "--cacert", tlsCAFile)
	}
	if s.user != nil {
		args = append(args, "-a", s.admin, "--no-auth-warning")
	}
	return args
}

// clientTLS is the TLS configuration of this host's connections to Redis
// node alias (through its published port), or nil without TLS.
func (s *redisSecurity) clientTLS(alias string) *tls.Config {
	if s == nil || !s.tls {
		return nil
	}
	return &tls.Config{ServerName: alias, RootCAs: s.pool, MinVersion: tls.VersionTLS12}
}

// password is the default user's password for this host's clients.
func (s *redisSecurity) password() string {
	if s == nil {
		return ""
	}
	return s.admin
}

// migrateAuth is MIGRATE's AUTH clause, for the target's default user.
func (s *redisSecurity) migrateAuth() []any {
	if s == nil || s.user == nil {
		return nil
	}
	return []any{"AUTH", s.admin}
}

// dialTLS wraps conn, dialled to Redis node alias, in TLS if the cluster
// uses it, and completes the handshake within ctx.
func (s *redisSecurity) dialTLS(ctx context.Context, conn net.Conn, alias string) (net.Conn, error) {
	cfg := s.clientTLS(alias)
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("harness: TLS to %s: %w", alias, err)
	}
	return tc, nil
}

// clusterURL is the --redis value naming seeds, with user and password
// when the cluster has an ACL user (empty ones: the user's own).
func (s *redisSecurity) clusterURL(seeds []string, user, password string) string {
	scheme := "redis-cluster://"
	if s != nil && s.tls {
		scheme = "rediss-cluster://"
	}
	cred := ""
	if s != nil && s.user != nil {
		if user == "" {
			user, password = s.user.Name, s.user.Password
		}
		cred = url.UserPassword(user, password).String() + "@"
	}
	return scheme + cred + strings.Join(seeds, ",")
}
