import { Module } from '@nestjs/common';
import { AuthModule } from './auth/auth.module';
import { CallsModule } from './calls/calls.module';
import { ChatModule } from './chat/chat.module';
import { HealthModule } from './health/health.module';
import { InfraModule } from './infra/infra.module';
import { OutboxModule } from './infra/outbox';
import { NotificationsModule } from './notifications/notifications.module';
import { PaymentsModule } from './payments/payments.module';
import { UsersModule } from './users/users.module';

@Module({
  imports: [InfraModule, OutboxModule, HealthModule, AuthModule, UsersModule, NotificationsModule, ChatModule, CallsModule, PaymentsModule],
})
export class AppModule {}
