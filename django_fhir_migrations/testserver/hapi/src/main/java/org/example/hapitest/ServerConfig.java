package org.example.hapitest;

import ca.uhn.fhir.batch2.jobs.bulkmodify.patch.BulkPatchJobAppCtx;
import ca.uhn.fhir.batch2.jobs.bulkmodify.patch.BulkPatchProvider;
import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.MemoryBinaryStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.SearchTotalModeEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import org.apache.commons.dbcp2.BasicDataSource;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

import javax.sql.DataSource;
import java.time.Duration;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;

/**
 * Spring wiring for a HAPI FHIR JPA server: R4 DAOs and resource providers from HAPI's
 * own configuration classes, plus the beans HAPI expects the host application to supply.
 */
@Configuration
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	// $hapi.fhir.bulk-patch: job definition "BULK_MODIFY_PATCH" (+ its steps) and the
	// BulkPatchProvider bean; Batch2JobsConfig does not import it.
	BulkPatchJobAppCtx.class,
	SubscriptionChannelConfig.class,
	ThreadPoolFactoryConfig.class
})
public class ServerConfig {

	/**
	 * Reference paths whose version ("Patient/1/_history/2") is stored as sent. HAPI strips
	 * the version from every other reference (ParserOptions#isStripVersionsFromReferences);
	 * FhirContextR4Config already exempts AuditEvent.entity.what, which we keep.
	 */
	static final List<String> VERSIONED_REFERENCE_PATHS = List.of("Provenance.target", "Provenance.entity.what");

	/**
	 * How often the Batch2 maintenance pass runs (HAPI's default: every 60 s). Every step of a
	 * Batch2 job ($hapi.fhir.bulk-patch, $reindex, ...) waits for a pass to be dispatched, so with
	 * the default a 5-step bulk patch of a handful of resources took ~4.5 min; at 2 s it takes a few
	 * seconds. A pass with no job to advance is one small query.
	 */
	static final long BATCH2_MAINTENANCE_INTERVAL_MILLIS = 2_000;

	/** Sets {@link #BATCH2_MAINTENANCE_INTERVAL_MILLIS} before the service schedules its Quartz job. */
	@Bean
	public static BeanPostProcessor batch2MaintenanceInterval() {
		return new BeanPostProcessor() {
			@Override
			public Object postProcessBeforeInitialization(Object theBean, String theBeanName) {
				if (theBean instanceof JobMaintenanceServiceImpl maintenance) {
					maintenance.setScheduledJobFrequencyMillis(BATCH2_MAINTENANCE_INTERVAL_MILLIS);
				}
				return theBean;
			}
		};
	}

	/**
	 * Adds {@link #VERSIONED_REFERENCE_PATHS} to the ParserOptions of HAPI's FhirContext bean
	 * ("primaryFhirContext", created by FhirContextR4Config) right after it is built, before
	 * any DAO, parser or validator uses it. Static: a BeanPostProcessor must not force this
	 * configuration class to be created early.
	 */
	@Bean
	public static BeanPostProcessor versionedReferencePaths() {
		return new BeanPostProcessor() {
			@Override
			public Object postProcessAfterInitialization(Object theBean, String theBeanName) {
				if (theBean instanceof FhirContext ctx) {
					Set<String> paths = new LinkedHashSet<>(ctx.getParserOptions().getDontStripVersionsFromReferencesAtPaths());
					paths.addAll(VERSIONED_REFERENCE_PATHS);
					ctx.getParserOptions().setDontStripVersionsFromReferencesAtPaths(paths);
				}
				return theBean;
			}
		};
	}

	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings settings = new JpaStorageSettings();
		// Searches see writes immediately: never reuse a cached result set.
		settings.setReuseCachedSearchResultsForMillis(null);
		// Searchset bundles always carry Bundle.total.
		settings.setDefaultTotalMode(SearchTotalModeEnum.ACCURATE);
		// Clients may PUT any id (numeric ones too); server-assigned ids are UUIDs.
		settings.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ANY);
		settings.setResourceServerIdStrategy(JpaStorageSettings.IdStrategyEnum.UUID);
		// Test clean-up must always be possible.
		settings.setEnforceReferentialIntegrityOnDelete(false);
		settings.setAllowMultipleDelete(true);
		settings.setExpungeEnabled(true);
		settings.setDeleteExpungeEnabled(true);
		// No Lucene/Elasticsearch.
		settings.setHibernateSearchIndexFullText(false);
		settings.setHibernateSearchIndexSearchParams(false);
		settings.setAdvancedHSearchIndexing(false);
		// A Batch2 step that produced a single work chunk triggers the next maintenance pass at
		// once instead of waiting for the scheduled one (see batch2MaintenanceInterval()).
		settings.setJobFastTrackingEnabled(true);
		// Not set: setAutoVersionReferenceAtPaths("Provenance.target"). It keeps explicit versions,
		// but also rewrites versionless references (Patient/X -> Patient/X/_history/<current>) and,
		// next to a DELETE of the target in the same transaction, picked a wrong version. See README.
		return settings;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		BasicDataSource ds = new BasicDataSource();
		ds.setDriver(Settings.isPostgres() ? new org.postgresql.Driver() : new org.h2.Driver());
		ds.setUrl(Settings.jdbcUrl());
		ds.setUsername(Settings.dbUser());
		ds.setPassword(Settings.dbPassword());
		ds.setMaxTotal(10);
		ds.setMaxWait(Duration.ofSeconds(30));
		return ds;
	}

	@Bean
	@Primary
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory theBeanFactory,
			FhirContext theFhirContext,
			JpaStorageSettings theStorageSettings,
			DataSource theDataSource) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(theBeanFactory, theFhirContext, theStorageSettings);
		emf.setPersistenceUnitName("HAPI_TEST_PU");
		emf.setDataSource(theDataSource);
		Properties props = new Properties();
		props.put("hibernate.dialect", Settings.isPostgres()
				? HapiFhirPostgresDialect.class.getName() : HapiFhirH2Dialect.class.getName());
		props.put("hibernate.hbm2ddl.auto", "update");
		props.put("hibernate.format_sql", "false");
		props.put("hibernate.show_sql", "false");
		props.put("hibernate.jdbc.batch_size", "20");
		props.put("hibernate.cache.use_query_cache", "false");
		props.put("hibernate.cache.use_second_level_cache", "false");
		props.put("hibernate.cache.use_structured_entries", "false");
		props.put("hibernate.cache.use_minimal_puts", "false");
		props.put("hibernate.search.enabled", "false");
		emf.setJpaProperties(props);
		return emf;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory theEntityManagerFactory) {
		return new JpaTransactionManager(theEntityManagerFactory);
	}

	@Bean
	public IBinaryStorageSvc binaryStorageSvc() {
		return new MemoryBinaryStorageSvcImpl();
	}

	@Bean
	public RestfulServer restfulServer(
			FhirContext theFhirContext,
			ResourceProviderFactory theResourceProviders,
			JpaSystemProvider<?, ?> theSystemProvider,
			IFhirSystemDao<?, ?> theSystemDao,
			JpaStorageSettings theStorageSettings,
			ISearchParamRegistry theSearchParamRegistry,
			IValidationSupport theValidationSupport,
			DatabaseBackedPagingProvider thePagingProvider,
			BulkPatchProvider theBulkPatchProvider) {
		RestfulServer server = new RestfulServer(theFhirContext);
		server.registerProviders(theResourceProviders.createProviders());
		server.registerProvider(theSystemProvider);
		// System-level $hapi.fhir.bulk-patch and $hapi.fhir.bulk-patch-status
		server.registerProvider(theBulkPatchProvider);

		thePagingProvider.setDefaultPageSize(20);
		thePagingProvider.setMaximumPageSize(1000);
		server.setPagingProvider(thePagingProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, theSystemDao, theStorageSettings, theSearchParamRegistry, theValidationSupport);
		capabilities.setImplementationDescription(
				"HAPI FHIR JPA test server (R4, " + (Settings.isPostgres() ? "PostgreSQL" : "H2") + ")");
		server.setServerConformanceProvider(capabilities);

		server.setServerAddressStrategy(new ServerAddress());
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setServerName("hapi-test-server");
		return server;
	}
}
