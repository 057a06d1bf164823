package org.example.hapitest;

/**
 * Runtime settings, read from a system property first, then an environment variable,
 * then a default.
 */
public final class Settings {

	private Settings() {}

	/** First non-blank of: -D system property, environment variable, default. */
	public static String get(String theProperty, String theEnvVar, String theDefault) {
		String value = System.getProperty(theProperty);
		if (value == null || value.isBlank()) {
			value = System.getenv(theEnvVar);
		}
		if (value == null || value.isBlank()) {
			value = theDefault;
		}
		return value == null ? null : value.trim();
	}

	/** TCP port to listen on; 0 means "pick a free port". */
	public static int port() {
		return Integer.parseInt(get("hapi.port", "HAPI_PORT", "8080"));
	}

	/** Address to bind; the FHIR base URL always uses this host. */
	public static String host() {
		return get("hapi.host", "HAPI_HOST", "127.0.0.1");
	}

	/** True when the JDBC URL names a PostgreSQL database instead of H2. */
	public static boolean isPostgres() {
		return jdbcUrl().startsWith("jdbc:postgresql:");
	}

	/** Database user (HAPI_DB_USER); H2's default "sa" otherwise. */
	public static String dbUser() {
		return get("hapi.db.user", "HAPI_DB_USER", "sa");
	}

	/** Database password (HAPI_DB_PASSWORD); empty by default. */
	public static String dbPassword() {
		return get("hapi.db.password", "HAPI_DB_PASSWORD", "");
	}

	/**
	 * JDBC URL of the H2 database. Default: a private in-memory database.
	 * HAPI_H2_DIR (or -Dhapi.h2.dir) switches to a file database in that directory;
	 * HAPI_DB_URL (or -Dhapi.db.url) gives the full JDBC URL: H2, or PostgreSQL
	 * ("jdbc:postgresql://host:port/db", with HAPI_DB_USER and HAPI_DB_PASSWORD).
	 */
	public static String jdbcUrl() {
		String url = get("hapi.db.url", "HAPI_DB_URL", null);
		if (url != null) {
			return url;
		}
		String dir = get("hapi.h2.dir", "HAPI_H2_DIR", null);
		if (dir != null) {
			return "jdbc:h2:file:" + java.nio.file.Path.of(dir).toAbsolutePath().resolve("hapi") + ";DB_CLOSE_ON_EXIT=FALSE;TRACE_LEVEL_FILE=0";
		}
		return "jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1;DB_CLOSE_ON_EXIT=FALSE";
	}
}
