// MutualTls loads a server's and a client's keystore.p12/truststore.p12 (as written by the driver
// into two volumes), completes one TLS 1.3 handshake with client authentication between them over
// loopback, and prints what each side saw as JSON. Any failure exits non-zero with the reason.
//
// Usage: java MutualTls <server-dir> <server-password> <client-dir> <client-password>
import java.io.BufferedReader;
import java.io.File;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public class MutualTls {
  public static void main(String[] args) throws Exception {
    SSLContext server = context(args[0], args[1]);
    SSLContext client = context(args[2], args[3]);
    try (SSLServerSocket listener = (SSLServerSocket) server.getServerSocketFactory().createServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      listener.setEnabledProtocols(new String[] {"TLSv1.3"});
      listener.setNeedClientAuth(true);
      CompletableFuture<String> serverSide = CompletableFuture.supplyAsync(() -> {
        try (SSLSocket socket = (SSLSocket) listener.accept()) {
          BufferedReader in = new BufferedReader(new InputStreamReader(socket.getInputStream()));
          String line = in.readLine();
          new PrintWriter(socket.getOutputStream(), true).println("pong");
          return line + " " + uri((X509Certificate) socket.getSession().getPeerCertificates()[0]);
        } catch (Exception e) {
          throw new RuntimeException(e);
        }
      });
      try (SSLSocket socket = (SSLSocket) client.getSocketFactory().createSocket(InetAddress.getLoopbackAddress(), listener.getLocalPort())) {
        socket.setEnabledProtocols(new String[] {"TLSv1.3"});
        new PrintWriter(socket.getOutputStream(), true).println("ping");
        String reply = new BufferedReader(new InputStreamReader(socket.getInputStream())).readLine();
        X509Certificate peer = (X509Certificate) socket.getSession().getPeerCertificates()[0];
        String[] seen = serverSide.get().split(" ");
        System.out.printf(
            "{\"protocol\":\"%s\",\"reply\":\"%s\",\"serverGot\":\"%s\",\"serverSawClient\":\"%s\",\"clientSawServer\":\"%s\",\"serverSerial\":\"%s\"}%n",
            socket.getSession().getProtocol(), reply, seen[0], seen[1], uri(peer), peer.getSerialNumber().toString(16).toUpperCase());
      }
    }
  }

  static SSLContext context(String dir, String password) throws Exception {
    KeyStore keys = load(new File(dir, "keystore.p12"), password);
    KeyStore trust = load(new File(dir, "truststore.p12"), password);
    KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
    kmf.init(keys, password.toCharArray());
    TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    tmf.init(trust);
    SSLContext context = SSLContext.getInstance("TLSv1.3");
    context.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
    return context;
  }

  static KeyStore load(File file, String password) throws Exception {
    KeyStore store = KeyStore.getInstance("PKCS12");
    try (FileInputStream in = new FileInputStream(file)) {
      store.load(in, password.toCharArray());
    }
    return store;
  }

  static String uri(X509Certificate cert) throws Exception {
    for (List<?> name : cert.getSubjectAlternativeNames()) {
      if ((Integer) name.get(0) == 6) return (String) name.get(1);
    }
    return "";
  }
}
