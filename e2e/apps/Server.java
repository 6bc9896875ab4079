// The Java service of the e2e shop: answers GET /ping on $PORT and, every 2 s, calls $PEER_URL with
// java.net.http, so a traced JVM keeps making spans.
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

public class Server {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 0);
        server.createContext("/", exchange -> {
            byte[] body = "pong\n".getBytes();
            exchange.sendResponseHeaders(200, body.length);
            exchange.getResponseBody().write(body);
            exchange.close();
        });
        server.start();
        System.out.println("java " + System.getProperty("java.version") + " listening on " + port
                + "; LD_PRELOAD=" + System.getenv().getOrDefault("LD_PRELOAD", ""));
        String peer = System.getenv("PEER_URL");
        if (peer != null) {
            HttpClient client = HttpClient.newHttpClient();
            HttpRequest request = HttpRequest.newBuilder(URI.create(peer)).build();
            Executors.newSingleThreadScheduledExecutor().scheduleAtFixedRate(() -> {
                try {
                    client.send(request, HttpResponse.BodyHandlers.discarding());
                } catch (Exception error) {
                    System.out.println("peer call failed: " + error);
                }
            }, 2, 2, TimeUnit.SECONDS);
        }
    }
}
